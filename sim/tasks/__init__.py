"""Task definitions (scene + reset distribution + success)."""
