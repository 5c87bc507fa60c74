# nst3d preset "Final": more steps, views and resolution, at each texture's own size.
import bpy

settings = bpy.context.scene.nst3d

settings.steps = 500
settings.size = 384
settings.views = 6
settings.texture_size = 0
