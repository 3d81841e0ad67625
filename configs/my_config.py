"""The default config of main.py when --config is omitted: edit it for your own data."""
from configs.bccd_yolo_r18 import BccdYoloR18


class MyConfig(BccdYoloR18):
    name = "my_config"
