#if canImport(Glibc)
import Glibc
#endif

/// Transfers past the page cache (`O_DIRECT`), for stores whose objects are read back
/// through the mounted files' own pages, where a second copy in the objects' pages only
/// costs memory and the CPU of filling it.
public enum DirectIO {
    /// `O_DIRECT` needs offsets, lengths and addresses aligned to the device's logical
    /// block, which is at most a page on the filesystems objects live on.
    public static let alignment = 4096

    /// Glibc defines `O_DIRECT` only under `_GNU_SOURCE`, which Swift's import leaves out;
    /// its value is the kernel's, per architecture.
    #if arch(arm64) || arch(arm)
    public static let flag: Int32 = 0o200000
    #else
    public static let flag: Int32 = 0o40000
    #endif

    /// Opens `path` for `flags`, with `O_DIRECT` when its filesystem supports it.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) -> Int32 {
        let fd = Glibc.open(path, flags | flag, mode)
        if fd >= 0 || errno != EINVAL { return fd }
        return Glibc.open(path, flags, mode)
    }

    /// Whether `bytes` may go to a direct write as they are: address and length aligned.
    public static func isAligned(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return false }
        return Int(bitPattern: base) % alignment == 0 && bytes.count % alignment == 0
    }

    /// A transparent huge page, where the architecture has them at this size.
    static let hugePage = 2 << 20

    /// Memory for a buffer of a chunk's size that the kernel copies into and out of whole
    /// (a download's piece, a written chunk): from 2 MiB up it is aligned to 2 MiB and
    /// asked to be backed by huge pages (`MADV_HUGEPAGE`; hosts that set transparent huge
    /// pages to `madvise`, Debian's default, give them only when asked). Pinning such a
    /// buffer for a direct write or a FUSE reply then walks one entry per 2 MiB instead of
    /// 512, and filling a fresh one faults twice per 4 MiB instead of 1024 times: a cold
    /// read of 1 GiB took the daemon 16 000 page faults. Freed with `deallocate()`.
    public static func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        guard byteCount >= hugePage else { return UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: alignment) }
        let base = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: hugePage)
        // Advice only: without huge pages the buffer works the same, at 4 KiB pages.
        _ = madvise(base, byteCount / hugePage * hugePage, MADV_HUGEPAGE)
        return base
    }

    /// `count` rounded up to a whole number of aligned blocks.
    public static func padded(_ count: Int) -> Int { (count + alignment - 1) / alignment * alignment }

    public static func isDirect(_ fd: Int32) -> Bool { fcntl(fd, F_GETFL) & flag != 0 }

    /// Goes on with ordinary I/O on `fd` after the filesystem refused a direct transfer.
    public static func drop(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~flag) }
    }
}
