"""Score labelled ISIC-layout image sets (AUC, operating point) and folders (submission.csv)."""
