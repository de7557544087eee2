"""Controllers that turn absolute EE pose targets into joint targets."""
