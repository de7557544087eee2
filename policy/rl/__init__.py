"""Reinforcement-learning fine-tuning (DPPO) and the Gaussian-policy PPO baseline.

Everything here works on tensors and a vector env's arrays; nothing imports sim/ or real/: the
training loop that meets the simulator is the entry script `sim/finetune.py`.
"""
