"""Library of the VesselDiffusion module: its Logic, without Qt.

The submodules import only VTK and the MRML classes. sinkshape and torch are
imported when a computation starts, so the module loads before they are installed.
"""
