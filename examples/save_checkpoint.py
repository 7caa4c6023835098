"""Save a checkpoint that prunecli loads with no other flag (architecture spec inside, weights only).

    python examples/save_checkpoint.py model.pt
    prunecli inspect model.pt
"""

import sys

import torch
import torchvision

model = torchvision.models.resnet18(num_classes=10)
# ... train the model ...
torch.save(
    {"arch": "torchvision:resnet18:num_classes=10", "state_dict": model.state_dict(), "input_shape": [1, 3, 32, 32]},
    sys.argv[1] if len(sys.argv) > 1 else "model.pt",
)
