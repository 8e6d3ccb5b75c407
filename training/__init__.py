"""Fine-tune an ImageNet backbone on a folder-per-class image set (TrashNet layout)."""
