"""Serving a warm model: the JSON-lines request protocol behind `ghostface serve` (`protocol`)."""
