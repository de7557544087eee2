"""Hardware: RealSense cameras, franky robot, safety, controller (later issues)."""
