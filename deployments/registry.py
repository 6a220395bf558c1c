"""The family registry: catalog `family` -> the class that serves it."""

from deployments.base import VisionModel
from deployments.blip import Blip
from deployments.florence2 import Florence2
from deployments.kosmos2 import Kosmos2
from deployments.siglip2 import Siglip2

FAMILIES: dict[str, type[VisionModel]] = {
    "florence2": Florence2,
    "kosmos2": Kosmos2,
    "siglip2": Siglip2,
    "blip": Blip,
}
