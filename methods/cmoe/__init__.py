"""LLaVA-CMoE (``cmoe``, ``cmoe-oracle``): probe-guided expansion (pgke), probabilistic task locator
(ptl), and the method that combines them (method). Importing the package registers both names."""
from methods.cmoe import method  # noqa: F401  (registers "cmoe" and "cmoe-oracle")
