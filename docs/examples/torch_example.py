import sys

import torch
from torch import nn

from beholder_plugin import Beholder

logdir = sys.argv[1] if len(sys.argv) > 1 else "logs/torch-run"

model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8 * 13 * 13, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
beholder = Beholder(logdir)
beholder.watch(model)  # weights, gradients or activations: whichever the dashboard picks

for _ in range(100):
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    beholder.update()  # a few microseconds unless a frame is due

beholder.close()
