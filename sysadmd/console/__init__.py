"""The web console: static files (``static/``) served on the HTTPS listener, and the resource serving them."""
