"""Waterbirds in its official on-disk format."""

from __future__ import annotations

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.table import AttributeTable, read_csv_table, require_files

METADATA_FILE = "metadata.csv"


class WaterbirdsDataModule(AttributeDataModule):
    """Waterbirds (or any dataset in its format, such as the embedded ``SyntheticWaterbirds``).

    Reads ``metadata.csv`` (columns ``img_id,img_filename,y,split,place,place_filename``, split 0 train,
    1 val, 2 test) under ``root``. Attributes: ``y`` (0 landbird, 1 waterbird) and ``place`` (0 land,
    1 water).
    """

    format = "waterbirds"
    layout = (
        f"  {METADATA_FILE} (columns img_id,img_filename,y,split,place,place_filename)\n"
        "  <img_filename> images, e.g. 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    )

    def load_table(self) -> AttributeTable:
        """Parses ``metadata.csv``."""
        require_files(self.root, [METADATA_FILE], self.layout)
        return read_csv_table(
            self.root / METADATA_FILE,
            image_root=self.root,
            image_column="img_filename",
            split_column="split",
            split_values={"train": "0", "val": "1", "test": "2"},
            attribute_columns=self.attributes,
        )
