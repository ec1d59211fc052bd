//! A BTF task-local storage map: aya-ebpf 0.2.1 has the `bpf_task_storage_get` helper
//! but no map type for it, so it is declared here with the same BTF layout as
//! aya-ebpf's `btf_maps::InodeStorage`.
use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, task_struct, BPF_F_NO_PREALLOC,
        BPF_LOCAL_STORAGE_GET_F_CREATE,
    },
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
};

/// Per-task storage. The kernel frees a task's value when the task exits, so no
/// cleanup is needed and the map cannot leak entries the way a tid-keyed hash can.
#[repr(C)]
pub struct TaskStorage<T> {
    // Field names and order are the BTF map definition ABI: the loader reads them.
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders patched by the loader, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    #[inline(always)]
    fn get(&self, task: *mut task_struct, flags: u64) -> Option<&mut T> {
        // SAFETY: `task` is a trusted BTF task pointer (current, or a tracepoint
        // argument); the helper returns null or a valid pointer to a T.
        unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast(),
                task,
                ptr::null_mut(),
                flags,
            )
            .cast::<T>()
            .as_mut()
        }
    }

    /// The current task's value, created zeroed if it doesn't exist yet.
    /// `None` when the kernel could not allocate it (or refused a recursive call).
    #[inline(always)]
    pub fn current_or_create(&self) -> Option<&mut T> {
        // SAFETY: helper without arguments.
        self.of_task_or_create(unsafe { bpf_get_current_task_btf() })
    }

    /// `task`'s value, created zeroed if it doesn't exist yet.
    #[inline(always)]
    pub fn of_task_or_create(&self, task: *mut task_struct) -> Option<&mut T> {
        self.get(task, BPF_LOCAL_STORAGE_GET_F_CREATE.into())
    }

    /// The current task's value, if one was created earlier.
    #[inline(always)]
    pub fn current(&self) -> Option<&mut T> {
        // SAFETY: helper without arguments.
        self.get(unsafe { bpf_get_current_task_btf() }, 0)
    }
}
