"""The computation graph and the Lipschitz bound that follows it (design.md §2.5)."""
