"""UniMed MONAI Label app: activelearning."""
