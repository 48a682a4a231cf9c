"""DataModules over real on-disk dataset formats, and the synthetic datasets written in them."""

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.celeba import CelebADataModule
from lightning_fair.data.csv import AttributeCSVDataModule
from lightning_fair.data.requests import GenerationRequests
from lightning_fair.data.synthetic.base import SyntheticDataset
from lightning_fair.data.synthetic.faces import SyntheticFaces
from lightning_fair.data.synthetic.waterbirds import SyntheticWaterbirds
from lightning_fair.data.waterbirds import WaterbirdsDataModule

__all__ = [
    "AttributeCSVDataModule",
    "AttributeDataModule",
    "CelebADataModule",
    "GenerationRequests",
    "SyntheticDataset",
    "SyntheticFaces",
    "SyntheticWaterbirds",
    "WaterbirdsDataModule",
]
