"""fedsim-example-app: A Flower / PyTorch app."""
