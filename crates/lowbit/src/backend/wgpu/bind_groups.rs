//! Bind groups made once per kernel and buffers, and the bind-group layouts that make that possible (the
//! params at a dynamic offset, reflected from each kernel's WGSL).

use super::errors::gpu_err;
use crate::Result;
use std::collections::HashMap;

/// Bind groups the cache may hold; past it, groups unused for `BIND_GROUP_AGE` submissions go.
const BIND_GROUP_CAP: usize = 4096;
const BIND_GROUP_AGE: u64 = 64;

/// A kernel and the buffers bound at each binding: what a bind group is made of, the params aside (they
/// are a dynamic offset into the ring, chosen at each dispatch).
pub(super) type BindKey = (usize, Vec<(u32, wgpu::Buffer)>);

/// Bind groups made before, so that a steady loop (a decode step binding the same weights and pooled
/// buffers each token) makes none: creating one per dispatch was about 3 us of host time on an H200.
///
/// A cached group keeps its buffers alive, so groups unused for `BIND_GROUP_AGE` submissions are dropped
/// once the cache holds `BIND_GROUP_CAP` groups, and every group goes before an upload of 1 MiB or more,
/// when the pool is trimmed and when an allocation runs out of memory (a dropped model's weights are then
/// freed before another model's take their place).
#[derive(Default)]
pub(super) struct BindGroups {
    pub(super) groups: HashMap<BindKey, (wgpu::BindGroup, u64)>,
    /// Submissions so far: the age of a group is counted in them.
    pub(super) now: u64,
    /// Groups made for the cache so far (misses).
    pub(super) made: u64,
}

impl BindGroups {
    pub(super) fn get_or_make(
        &mut self,
        key: BindKey,
        make: impl FnOnce() -> wgpu::BindGroup,
    ) -> wgpu::BindGroup {
        let now = self.now;
        if let Some((g, used)) = self.groups.get_mut(&key) {
            *used = now;
            return g.clone();
        }
        if self.groups.len() >= BIND_GROUP_CAP {
            self.groups
                .retain(|_, (_, used)| now.saturating_sub(*used) < BIND_GROUP_AGE);
            if self.groups.len() >= BIND_GROUP_CAP {
                self.groups.clear();
            }
        }
        let g = make();
        self.made += 1;
        self.groups.insert(key, (g.clone(), now));
        g
    }
}

/// The bind-group layout of a kernel: each group-0 binding its entry point uses (as wgpu would derive it),
/// with the params at binding 0 read at a dynamic offset into the ring, so that a bind group does not
/// depend on the dispatch's params and can be reused (`BindGroups`).
pub(super) fn layout_entries(source: &str, key: &str) -> Result<Vec<wgpu::BindGroupLayoutEntry>> {
    use wgpu::naga;
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| gpu_err(format!("shader {key}: {}", e.emit_to_string(source))))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| gpu_err(format!("shader {key}: {}", e.emit_to_string(source))))?;
    let used = info.get_entry_point(0);
    let mut entries = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if rb.group != 0 || used[handle].is_empty() {
            continue;
        }
        let ty = match var.space {
            naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
            naga::AddressSpace::Storage { access } => wgpu::BufferBindingType::Storage {
                read_only: !access.contains(naga::StorageAccess::STORE),
            },
            other => {
                return Err(gpu_err(format!(
                    "shader {key}: binding {} is in address space {other:?}; kernels bind buffers only",
                    rb.binding
                )));
            }
        };
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: rb.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: rb.binding == 0,
                min_binding_size: None,
            },
            count: None,
        });
    }
    if !entries.iter().any(|e| {
        e.binding == 0
            && matches!(
                e.ty,
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    ..
                }
            )
    }) {
        return Err(gpu_err(format!(
            "shader {key}: every kernel reads its params as a uniform at binding 0"
        )));
    }
    Ok(entries)
}
