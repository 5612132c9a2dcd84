"""Files and scripts that run on the serving host (copied there inside the app bundle)."""
