"""UniMed MONAI Label app: infers."""
