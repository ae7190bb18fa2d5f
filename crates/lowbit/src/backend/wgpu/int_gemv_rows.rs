//! Multi-row integer GEMVs on the GPU: 1–32 int8 activation rows through an int8 weight (LLM.int8()'s exact
//! product) and 2–32 through a BitNet ternary weight, each weight word read once per [`ROWS_PER_PASS`]
//! activation rows (`shaders/int8_gemv_rows.wgsl`, `shaders/ternary_gemv_rows.wgsl`), and the choice between
//! them and the tiled GEMM by row count. Both products are exact integer sums, so every path gives the same
//! bits.

use super::context::{Gpu, Recorder};
use super::gemv_rows::{ROWS_PER_PASS, pass_rows};
use super::kernels::{encode_gemm, groups};
use super::shaders::{GemmKind, Shader, repeat_lines};
use crate::Result;

const INT8_TEMPLATE: &str = include_str!("shaders/int8_gemv_rows.wgsl");
const TERNARY_TEMPLATE: &str = include_str!("shaders/ternary_gemv_rows.wgsl");

/// Largest row count that runs a multi-row integer GEMV: each pass of [`ROWS_PER_PASS`] rows re-reads the
/// weight, the GEMM reads it once per 64 rows (crossover measured in docs/PERFORMANCE.md).
pub const ROWS_MAX: usize = 32;

/// Threads per weight row: enough 16-byte words per thread to hide latency at 4096 columns (8 each).
const TPR: u32 = 32;

/// Whether `rows` activation rows of a `cols`-column int8 weight run the multi-row GEMV (else the tiled GEMM):
/// it loads whole 16-byte words of each row.
pub fn int8_takes_gemv(rows: usize, cols: usize) -> bool {
    (1..=ROWS_MAX).contains(&rows) && cols.is_multiple_of(16)
}

/// Whether `rows` activation rows of a ternary weight with `cols` columns run the multi-row GEMV: one row takes
/// the batch-1 GEMV, more than [`ROWS_MAX`] or columns that are not whole 16-byte words the tiled GEMM.
pub fn ternary_takes_gemv_rows(rows: usize, cols: usize) -> bool {
    (2..=ROWS_MAX).contains(&rows) && cols.is_multiple_of(16)
}

fn consts(nb: u32) -> String {
    format!(
        "const TPR: u32 = {TPR}u;\nconst SETS: u32 = {}u;\nconst NB: u32 = {nb}u;\nconst RED_LEN: u32 = {}u;\n",
        256 / TPR,
        256 * nb
    )
}

/// WGSL of the int8 multi-row GEMV for `nb` activation rows per dispatch.
pub(crate) fn int8_source(nb: u32) -> String {
    assert!((1..=ROWS_PER_PASS as u32).contains(&nb));
    let setup = "    let xb{i} = min(p.p2 + {i}u, last_b) * chunks;\n    var acc{i} = 0i;\n";
    let body = "        acc{i} = acc{i} + dot16(wv, q[xb{i} + k]);\n";
    consts(nb)
        + &INT8_TEMPLATE
            .replace("ROW_SETUP\n", &repeat_lines(nb, setup))
            .replace("ROW_BODY\n", &repeat_lines(nb, body))
            .replace(
                "ROW_STORE\n",
                &repeat_lines(nb, "    red[lid * NB + {i}u] = acc{i};\n"),
            )
}

/// WGSL of the ternary multi-row GEMV for `nb` activation rows per dispatch.
pub(crate) fn ternary_source(nb: u32) -> String {
    assert!((1..=ROWS_PER_PASS as u32).contains(&nb));
    let setup =
        "    let xb{i} = min(p.p3 + {i}u, last_b) * chunks;\n    var acc{i} = vec4<i32>(0);\n";
    let body = "        acc{i} = acc{i} + dot_rows(c0, c1, c2, c3, xq[xb{i} + k]);\n";
    let reduce = "    reduce_store(lid, t, pr, p.p3 + {i}u, acc{i});\n";
    consts(nb)
        + &TERNARY_TEMPLATE
            .replace("ROW_SETUP\n", &repeat_lines(nb, setup))
            .replace("ROW_BODY\n", &repeat_lines(nb, body))
            .replace("ROW_REDUCE\n", &repeat_lines(nb, reduce))
}

/// Records the exact `c[m, n] = q[m, k] @ w[n, k]^T` in i32 (buffers: q i8, w i8, c i32): the multi-row GEMV for
/// up to [`ROWS_MAX`] rows of whole 16-byte words, else the tiled GEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_int8_matmul(
    gpu: &Gpu,
    enc: &mut Recorder,
    m: usize,
    n: usize,
    k: usize,
    q: &wgpu::Buffer,
    w: &wgpu::Buffer,
    c: &wgpu::Buffer,
) -> Result<()> {
    if !int8_takes_gemv(m, k) {
        let bufs = [(1, q), (2, w), (6, c)];
        return encode_gemm(gpu, enc, GemmKind::Int8, m, n, k, 0, 0, &bufs);
    }
    let bufs = [(1, q), (2, w), (3, c)];
    let grid = groups(n, (256 / TPR) as usize);
    for b0 in (0..m).step_by(ROWS_PER_PASS) {
        let params = [n as u32, k as u32, b0 as u32, m as u32, 0, 0, 0, 0];
        let shader = Shader::Int8GemvRows(pass_rows(m - b0));
        gpu.encode(enc, &shader, params, &bufs, grid, None)?;
    }
    Ok(())
}

/// Records BitNet's exact integer product for 2–[`ROWS_MAX`] activation rows (`batch`, cols % 16 == 0): `acc[b,
/// o] = sum_k xq[b, k] * w[o, k]` (`[batch, rows]` i32) from the packed weight of `r_rows` packed rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_rows(
    gpu: &Gpu,
    enc: &mut Recorder,
    batch: usize,
    rows: usize,
    r_rows: usize,
    cols: usize,
    xq: &wgpu::Buffer,
    w: &wgpu::Buffer,
    acc: &wgpu::Buffer,
) -> Result<()> {
    debug_assert!(ternary_takes_gemv_rows(batch, cols));
    let bufs = [(1, xq), (2, w), (3, acc)];
    let grid = groups(r_rows, (256 / TPR) as usize);
    for b0 in (0..batch).step_by(ROWS_PER_PASS) {
        let params = [
            rows as u32,
            cols as u32,
            r_rows as u32,
            b0 as u32,
            batch as u32,
            0,
            0,
            0,
        ];
        let shader = Shader::TernaryGemvRows(pass_rows(batch - b0));
        gpu.encode(enc, &shader, params, &bufs, grid, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossover_picks_the_gemv_for_up_to_32_aligned_rows() {
        assert!(!int8_takes_gemv(0, 4096));
        for rows in 1..=ROWS_MAX {
            assert!(int8_takes_gemv(rows, 4096));
        }
        assert!(!int8_takes_gemv(ROWS_MAX + 1, 4096));
        assert!(!int8_takes_gemv(4, 4104));
        assert!(
            !ternary_takes_gemv_rows(1, 4096),
            "one row: the batch-1 GEMV"
        );
        for rows in 2..=ROWS_MAX {
            assert!(ternary_takes_gemv_rows(rows, 4096));
        }
        assert!(!ternary_takes_gemv_rows(ROWS_MAX + 1, 4096));
        assert!(!ternary_takes_gemv_rows(8, 520));
        assert_eq!(pass_rows(3), 4);
        assert_eq!(pass_rows(9), 8);
    }

    #[test]
    fn every_variant_is_generated() {
        for nb in [1u32, 2, 4, 8] {
            for s in [int8_source(nb), ternary_source(nb)] {
                assert!(!s.contains("ROW_") && s.contains(&format!("acc{}", nb - 1)));
            }
        }
    }
}
