"""Below both the writer (``study/``) and the reader (``analysis/``): what they share about MLflow stores."""
