"""The CUDA driver calls the launcher makes itself (numba-cuda has no public API for them),
through numba-cuda's checked driver wrapper; one function each, testable with a fake
``api()``."""

from __future__ import annotations


def api():
    """(cuda.bindings.driver, numba-cuda's checked driver object)."""
    from numba.cuda.cudadrv.driver import binding, driver

    return binding, driver


def ensure_context(dev):
    """Make device ``dev``'s primary context current on this thread if no context is:
    kernels are context-independent ``CUkernel`` handles, and a launch on a default stream
    (0, 1, 2) runs in the thread's current context; a thread that never made one current
    (e.g. one that only reused pooled memory) gets CUDA_ERROR_INVALID_CONTEXT."""
    binding, driver = api()
    if int(driver.cuCtxGetCurrent()):
        return
    ctx = driver.cuDevicePrimaryCtxRetain(driver.cuDeviceGet(dev))
    driver.cuCtxSetCurrent(ctx)


def set_max_dynamic_shared(handle, dev, nbytes):
    """Allow ``nbytes`` of dynamic shared memory (above the default 48 KB) for a kernel
    handle: a ``CUkernel`` (cuda.core's library loader) or a ``CUfunction``."""
    binding, driver = api()
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    if isinstance(handle, binding.CUkernel):
        driver.cuKernelSetAttribute(attr, nbytes, handle, dev)
    else:
        driver.cuFuncSetAttribute(handle, attr, nbytes)


def memory_pools_supported(dev):
    binding, driver = api()
    attr = binding.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED
    return bool(driver.cuDeviceGetAttribute(attr, driver.cuDeviceGet(dev)))


def alloc_async(nbytes, stream):
    """Stream-ordered device memory (``cuMemAllocAsync``, the device's default pool)."""
    binding, driver = api()
    return int(driver.cuMemAllocAsync(nbytes, binding.CUstream(stream)))


def free_async(ptr, stream):
    """Release memory from ``alloc_async`` once the work queued on ``stream`` before this
    call is done; the host does not wait (``cuMemFreeAsync``)."""
    binding, driver = api()
    driver.cuMemFreeAsync(binding.CUdeviceptr(ptr), binding.CUstream(stream))


def pointer_device(ptr):
    """The ordinal of the device that holds device pointer ``ptr``."""
    binding, driver = api()
    attr = binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    return int(driver.cuPointerGetAttribute(attr, ptr))
