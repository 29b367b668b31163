"""Data loaders: digits, ImageFolder trees, CIFAR-10 JPEGs."""
