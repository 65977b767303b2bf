"""Images to GL textures with one copy.

- NumPy arrays (what snapshots hold; a CPU Warp array's `.numpy()` is a view of its memory):
  `texture.write(array)` reads the array's buffer directly, no intermediate Python copy.
- CUDA Warp arrays: the array is copied device-to-device into a GL pixel-unpack buffer registered
  with CUDA (`wp.RegisteredGLBuffer`), then the texture is filled from that buffer on the GPU.
  If registration fails (no CUDA/GL interop, e.g. a remote display) the array comes to the host
  once (`.numpy()`) and is written as above. This path cannot run on a machine without a GPU and
  is untested here.
"""

from __future__ import annotations

import logging

import moderngl
import numpy as np

log = logging.getLogger("drstudio.viewer")

_DTYPES = {np.dtype(np.float32): "f4", np.dtype(np.uint8): "f1"}


class Uploader:
    """Writes images into textures it owns, (re)creating a texture when the shape changes."""

    def __init__(self, ctx: moderngl.Context):
        self.ctx = ctx
        self.textures: dict[str, moderngl.Texture] = {}
        self._pbos: dict[str, tuple] = {}  # name -> (moderngl.Buffer, wp.RegisteredGLBuffer)
        self._interop_failed = False
        self._sources: dict[str, object] = {}  # name -> the array last written (kept: identity check)

    def texture(self, name: str, width: int, height: int, components: int, dtype: str = "f4", *,
                filter=(moderngl.LINEAR, moderngl.LINEAR), repeat: bool = False) -> moderngl.Texture:
        tex = self.textures.get(name)
        if tex is None or tex.size != (width, height) or tex.components != components or tex.dtype != dtype:
            if tex is not None:
                tex.release()
            self._sources.pop(name, None)
            tex = self.ctx.texture((width, height), components, dtype=dtype, alignment=1)
            tex.filter = filter
            tex.repeat_x = tex.repeat_y = repeat
            if components == 1:
                tex.swizzle = "RRR1" if dtype == "f1" else "R001"
            self.textures[name] = tex
        return tex

    def forget(self, name: str) -> None:
        """The next `upload(name, ...)` writes even the same array (its sampling settings changed)."""
        self._sources.pop(name, None)

    def upload(self, name: str, image, *, mipmaps: bool = False, repeat: bool = False,
               nearest: bool = False) -> moderngl.Texture:
        """Write an (H, W, C) float32/uint8 NumPy array or a CUDA wp.array of that shape into the
        texture `name` (row 0 first: GL texture coordinate t = 0 is the image's top row). Writing the
        same array object again is skipped: snapshot arrays are immutable, a new value is a new object."""
        tex = self.textures.get(name)
        if tex is not None and self._sources.get(name) is image:
            return tex
        shape = tuple(image.shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        h, w, c = shape
        dtype = _DTYPES.get(np.dtype(getattr(image, "dtype", np.float32)) if isinstance(image, np.ndarray)
                            else np.dtype(np.float32), "f4")
        if mipmaps:
            filt = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        elif nearest:
            filt = (moderngl.NEAREST, moderngl.NEAREST)
        else:
            filt = (moderngl.LINEAR, moderngl.LINEAR)
        tex = self.texture(name, w, h, c, dtype, filter=filt, repeat=repeat)
        if tex.filter != filt:
            tex.filter = filt
        tex.repeat_x = tex.repeat_y = repeat
        if isinstance(image, np.ndarray):
            data = image if image.flags.c_contiguous and image.dtype in _DTYPES else \
                np.ascontiguousarray(image, dtype=np.float32)
            tex.write(data)
        else:
            self._upload_device(name, tex, image)
        if mipmaps:
            tex.build_mipmaps()
        self._sources[name] = image
        return tex

    def _upload_device(self, name: str, tex: moderngl.Texture, array) -> None:
        """A wp.array: on CUDA through a registered GL buffer, else through its host view."""
        import warp as wp

        if not array.device.is_cuda or self._interop_failed or array.dtype != wp.float32:
            tex.write(array.numpy())  # a CPU array's .numpy() is a view: one copy, into GL
            return
        nbytes = int(np.prod(array.shape)) * 4
        entry = self._pbos.get(name)
        try:
            if entry is None or entry[0].size != nbytes:
                if entry is not None:
                    entry[0].release()
                pbo = self.ctx.buffer(reserve=nbytes)
                reg = wp.RegisteredGLBuffer(pbo.glo, array.device, flags=wp.RegisteredGLBuffer.WRITE_DISCARD)
                entry = self._pbos[name] = (pbo, reg)
            pbo, reg = entry
            dst = reg.map(dtype=wp.float32, shape=(nbytes // 4,))
            wp.copy(dst, array.flatten() if array.is_contiguous else wp.clone(array).flatten())
            reg.unmap()
            tex.write(pbo)
        except Exception as exc:  # no CUDA/GL interop here: fall back to one host copy
            log.warning("CUDA/GL interop unavailable (%s); uploading through host memory", exc)
            self._interop_failed = True
            tex.write(array.numpy())

    def release(self) -> None:
        for tex in self.textures.values():
            tex.release()
        self.textures.clear()
        self._sources.clear()
        for pbo, _reg in self._pbos.values():
            pbo.release()
        self._pbos.clear()
