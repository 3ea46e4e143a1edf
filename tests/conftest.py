import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import os

# Tests never reach the network: pretrained weights come from files a test writes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
