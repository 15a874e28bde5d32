"""peftbench: fine-tune pretrained models with PEFT methods and compare them fairly."""

__version__ = "0.1.0"
