"""UniMed MONAI Label app: scoring."""
