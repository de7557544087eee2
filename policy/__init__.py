"""Models and learning: ViT encoder, diffusion, DPPO agent (later issues). Imports nothing from sim/ or real/."""
