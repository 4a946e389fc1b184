"""BaRP's learning rule as plain PyTorch: preferences, reward, REINFORCE losses, the neighbour critic, the policy."""
