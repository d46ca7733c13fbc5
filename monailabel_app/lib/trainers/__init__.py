"""UniMed MONAI Label app: trainers."""
