"""The computation graph and the Lipschitz bound that follows it (AutoLip: composition multiplies, sums add)."""
