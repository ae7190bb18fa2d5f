//! Where the host time of one small op goes, layer by layer (`cuda_bench --host-cost` prints it): the raw
//! launch, the allocation of the result, the backend op, the runtime around it, and the GPU's own time per
//! tiny kernel (queued behind long copies, so the host is not the limit).

use super::super::CudaBackend;
use super::{Arg, THREADS, blocks, dt, gpu_seconds_per_call, p};
use crate::backend::Backend;
use crate::capability::Op;
use crate::tensor::{DType, Tensor};
use crate::{Device, Result};
use std::sync::Arc;
use std::time::Instant;

/// Mean host microseconds per call of `f` over `calls` calls, after a warm-up.
fn per_call(calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..20 {
        f()?;
    }
    let t = Instant::now();
    for _ in 0..calls {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / calls as f64)
}

impl CudaBackend {
    /// Host microseconds per call of an add of 4096 f32 at each layer, and the GPU's microseconds per such
    /// kernel; `(what, us)` pairs.
    #[doc(hidden)]
    pub fn host_costs(&self, calls: usize) -> Result<Vec<(&'static str, f64)>> {
        let c = &self.cuda;
        let dev = Device::from_backend(Arc::new(self.clone()));
        let n = 4096;
        let host = |v: f32| Tensor::f32(vec![n], vec![v; n]);
        let (a, b) = (dev.to_device(&host(1.0)?)?, dev.to_device(&host(2.0)?)?);
        let (sa, sb) = (
            a.storage_arc_on("add", &c.id)?,
            b.storage_arc_on("add", &c.id)?,
        );
        let y = c.alloc("add", n * 4)?;
        let args = [
            p(&sa),
            p(&sb),
            dt(DType::F32),
            Arg::U64(n as u64),
            Arg::I32(0),
            p(&y),
        ];
        let launch = || c.launch("binary", (blocks(n), 1), THREADS, &args);
        let mut out = Vec::new();
        let mut note = |what, us: Result<f64>| -> Result<()> {
            c.synchronize()?;
            out.push((what, us?));
            Ok(())
        };
        note("launch (result preallocated)", per_call(calls, launch))?;
        note(
            "allocate and free the result",
            per_call(calls, || c.alloc("add", n * 4).map(drop)),
        )?;
        note(
            "backend kernel call (allocate, launch)",
            per_call(calls, || c.binary_dev(&sa, &sb, DType::F32, n, 0).map(drop)),
        )?;
        note(
            "backend op (device tensors)",
            per_call(calls, || self.run_op(&Op::Add, &[&a, &b]).map(drop)),
        )?;
        note(
            "Device::add (runtime: checks, statistics)",
            per_call(calls, || dev.add(&a, &b).map(drop)),
        )?;
        // GPU side: copies of 1 GiB (about 0.5 ms each) first, so the kernels queue behind them.
        let big = c.alloc("copy", 1 << 30)?;
        let big2 = c.alloc("copy", 1 << 30)?;
        for _ in 0..40 {
            c.copy(&big, &big2, 0, 1 << 30)?;
        }
        out.push((
            "GPU time per tiny kernel",
            gpu_seconds_per_call(c, calls, launch)? * 1e6,
        ));
        Ok(out)
    }
}
