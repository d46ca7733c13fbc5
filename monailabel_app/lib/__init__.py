"""UniMed MONAI Label app: lib."""
