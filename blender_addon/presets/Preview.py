# nst3d preset "Preview": small and fast, to judge a style before a Final run (about a tenth of its time).
import bpy

settings = bpy.context.scene.nst3d

settings.steps = 80
settings.size = 160
settings.views = 2
settings.texture_size = 512
