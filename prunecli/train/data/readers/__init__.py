"""One reader per --data source (timm's data/readers/ layout): each turns a spec into Loaders."""
