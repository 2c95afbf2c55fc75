import sys

import lightning.pytorch as L
import torch
from torch import nn

from beholder_plugin import BeholderLightningCallback

logdir = sys.argv[1] if len(sys.argv) > 1 else "logs/lightning"


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


data = torch.utils.data.TensorDataset(torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)))
trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                    callbacks=[BeholderLightningCallback(logdir)])
trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=32))
