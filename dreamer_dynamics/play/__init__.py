"""`dreamer-dynamics play`: a browser page that imagines frames in real time from your keys (docs/play.md)."""
