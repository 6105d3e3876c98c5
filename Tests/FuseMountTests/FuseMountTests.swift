import CSyscalls
import Foundation
import FuseMount
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Real mounts, driven through ordinary syscalls and the shell tools people use.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct FuseMountTests {
    @Test func filesReadBackWhatWasWritten() throws {
        let vol = try MountedVolume(chunkSize: 64 * 1024)
        let data = pattern(300_000, seed: 1)
        try writeFile(vol.path("f"), data)
        #expect(try readFile(vol.path("f")) == data)
        #expect(try statOf(vol.path("f")).st_size == 300_000)

        // pwrite past the end leaves a hole of zeros.
        let fd = open(vol.path("f"), O_RDWR)
        try #require(fd >= 0)
        #expect([UInt8]([9, 9]).withUnsafeBytes { pwrite(fd, $0.baseAddress, 2, 400_000) } == 2)
        var buffer = [UInt8](repeating: 1, count: 10)
        #expect(pread(fd, &buffer, 10, 399_998) == 4)
        #expect(Array(buffer[0..<4]) == [0, 0, 9, 9])
        close(fd)

        // O_APPEND writes at the end, O_EXCL refuses an existing name, O_TRUNC empties.
        try writeFile(vol.path("f"), [7, 7], flags: O_WRONLY | O_APPEND)
        #expect(try statOf(vol.path("f")).st_size == 400_004)
        #expect(errnoOf(open(vol.path("f"), O_WRONLY | O_CREAT | O_EXCL, 0o644)) == EEXIST)
        try writeFile(vol.path("f"), [1], flags: O_WRONLY | O_TRUNC)
        #expect(try readFile(vol.path("f")) == [1])
        #expect(errnoOf(open(vol.path("missing"), O_RDONLY)) == ENOENT)
    }

    /// Threads that poll for the next request read from /dev/fuse clones of their own and
    /// answer on them; one-by-one callers, bulk streams and parallel readers must all get
    /// their answers, whether threads poll or sleep at once.
    @Test(arguments: [0, 2000]) func requestsAreAnsweredWhetherThreadsPollOrSleep(pollMicroseconds: Int) throws {
        let vol = try MountedVolume(chunkSize: 64 * 1024, pollMicroseconds: pollMicroseconds)
        let before = FuseMount.requestsFoundByPolling
        #expect(mkdir(vol.path("d"), 0o755) == 0)
        for i in 0..<300 { try writeFile(vol.path("d/f\(i)"), pattern(100 + i, seed: UInt8(i % 251))) }
        for i in 0..<300 { #expect(try readFile(vol.path("d/f\(i)")) == pattern(100 + i, seed: UInt8(i % 251))) }
        let big = pattern(3_000_000, seed: 7)
        try writeFile(vol.path("big"), big)
        let results = Mutex<[Bool]>([])
        let root = vol.mountpoint
        DispatchQueue.concurrentPerform(iterations: 6) { worker in
            let same = (try? readFile(root + "/big")) == big
                && (0..<50).allSatisfy { (try? readFile(root + "/d/f\($0 * 6 + worker)")) == pattern(100 + $0 * 6 + worker, seed: UInt8(($0 * 6 + worker) % 251)) }
            results.withLock { $0.append(same) }
        }
        #expect(results.withLock { $0 } == Array(repeating: true, count: 6))
        if pollMicroseconds > 0 {
            // 2 ms is far longer than a caller takes between two requests of a file.
            #expect(FuseMount.requestsFoundByPolling > before)
        }
        vol.unmount()
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        #expect(!mounts.contains(" \(vol.mountpoint) "))
    }

    @Test func unlinkWhileOpenKeepsData() throws {
        let vol = try MountedVolume()
        try writeFile(vol.path("f"), [1, 2, 3])
        let fd = open(vol.path("f"), O_RDWR)
        try #require(fd >= 0)
        #expect(unlink(vol.path("f")) == 0)
        #expect(errnoOf(access(vol.path("f"), F_OK)) == ENOENT)
        #expect([UInt8]([4]).withUnsafeBytes { pwrite(fd, $0.baseAddress, 1, 3) } == 1)
        lseek(fd, 0, SEEK_SET)
        #expect(try readAll(fd) == [1, 2, 3, 4])
        var st = stat()
        #expect(fstat(fd, &st) == 0 && st.st_nlink == 0)
        close(fd)
    }

    @Test func directoriesAndRenames() throws {
        let vol = try MountedVolume()
        #expect(mkdir(vol.path("a"), 0o755) == 0)
        #expect(mkdir(vol.path("a/b"), 0o755) == 0)
        #expect(errnoOf(mkdir(vol.path("a"), 0o755)) == EEXIST)
        #expect(errnoOf(rmdir(vol.path("a"))) == ENOTEMPTY)
        #expect(errnoOf(rename(vol.path("a"), vol.path("a/b/c"))) == EINVAL)
        try writeFile(vol.path("x"), [1])
        try writeFile(vol.path("y"), [2])
        #expect(errnoOf(CSyscalls_renameat2(AT_FDCWD, vol.path("x"), AT_FDCWD, vol.path("y"), CSyscalls_RENAME_NOREPLACE)) == EEXIST)
        #expect(CSyscalls_renameat2(AT_FDCWD, vol.path("x"), AT_FDCWD, vol.path("y"), CSyscalls_RENAME_EXCHANGE) == 0)
        #expect(try readFile(vol.path("x")) == [2])
        #expect(try readFile(vol.path("y")) == [1])
        #expect(rename(vol.path("x"), vol.path("y")) == 0)
        #expect(try readFile(vol.path("y")) == [2])
        #expect(errnoOf(rename(vol.path("y"), vol.path("a"))) == EISDIR)
        #expect(errnoOf(rename(vol.path("a"), vol.path("y"))) == ENOTDIR)
        #expect(mkdir(vol.path("empty"), 0o755) == 0)
        #expect(rename(vol.path("a/b"), vol.path("empty")) == 0)
        #expect(try statOf(vol.path("a")).st_nlink == 2)
        #expect(try statOf(vol.path(".")).st_nlink == 4)
        #expect(errnoOf(rmdir(vol.path("a/b"))) == ENOENT)
        #expect(rmdir(vol.path("empty")) == 0)
        let long = String(repeating: "n", count: 256)
        #expect(errnoOf(open(vol.path(long), O_WRONLY | O_CREAT, 0o644)) == ENAMETOOLONG)
        try writeFile(vol.path(String(repeating: "m", count: 255)), [1])
    }

    /// POSIX's promise to a directory stream: a name neither added nor removed since it
    /// was opened is read exactly once, however the directory changes meanwhile; `seekdir`
    /// to a `telldir` position reads on from there; `rewinddir` sees the directory as it is.
    @Test func aDirectoryStreamReadsEachNameOnceWhileTheDirectoryChanges() throws {
        let vol = try MountedVolume()
        #expect(mkdir(vol.path("d"), 0o755) == 0)
        for i in 0..<500 { try writeFile(vol.path("d/f\(i)"), [UInt8(i & 0xff)]) }
        func next(_ stream: OpaquePointer) -> String? {
            guard let entry = readdir(stream) else { return nil }
            return withUnsafePointer(to: entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
        }
        let stream = try #require(opendir(vol.path("d")))
        defer { closedir(stream) }
        var seen: [String] = []
        while seen.count < 100, let name = next(stream) { seen.append(name) }
        let position = telldir(stream)
        let atPosition = try #require(next(stream))
        seen.append(atPosition)
        let removed = (0..<500).map { "f\($0)" }.filter { !seen.contains($0) }.prefix(50)
        for name in removed { #expect(unlink(vol.path("d/" + name)) == 0) }
        for i in 0..<50 { try writeFile(vol.path("d/new\(i)"), [1]) }
        while let name = next(stream) { seen.append(name) }
        #expect(Set(seen).count == seen.count, "a name was read twice")
        let kept = Set((0..<500).map { "f\($0)" }).subtracting(removed)
        #expect(kept.isSubset(of: Set(seen)), "names that stayed were all read")
        seekdir(stream, position)
        #expect(next(stream) == atPosition)
        rewinddir(stream)
        var again: [String] = []
        while let name = next(stream) { again.append(name) }
        #expect(Set(again) == kept.union((0..<50).map { "new\($0)" }).union([".", ".."]))
    }

    @Test func linksAndSymlinks() throws {
        let vol = try MountedVolume()
        try writeFile(vol.path("f"), [5])
        #expect(link(vol.path("f"), vol.path("g")) == 0)
        #expect(try statOf(vol.path("f")).st_nlink == 2)
        #expect(try statOf(vol.path("f")).st_ino == statOf(vol.path("g")).st_ino)
        #expect(unlink(vol.path("f")) == 0)
        #expect(try statOf(vol.path("g")).st_nlink == 1)
        #expect(symlink("g", vol.path("s")) == 0)
        var buffer = [CChar](repeating: 0, count: 100)
        #expect(readlink(vol.path("s"), &buffer, 100) == 1)
        #expect(try readFile(vol.path("s")) == [5])
        #expect(try statOf(vol.path("s")).st_mode & S_IFMT == S_IFLNK)
        #expect(mkdir(vol.path("d"), 0o755) == 0)
        #expect(errnoOf(link(vol.path("d"), vol.path("d2"))) == EPERM)
    }

    @Test func attributesAndTimes() throws {
        let vol = try MountedVolume()
        try writeFile(vol.path("f"), [1])
        #expect(chmod(vol.path("f"), 0o600) == 0)
        #expect(try statOf(vol.path("f")).st_mode & 0o7777 == 0o600)
        #expect(chown(vol.path("f"), 1234, 5678) == 0)
        #expect(try statOf(vol.path("f")).st_uid == 1234)
        #expect(try statOf(vol.path("f")).st_gid == 5678)

        var times = [timespec(tv_sec: 1_000_000, tv_nsec: 5), timespec(tv_sec: 2_000_000, tv_nsec: 7)]
        #expect(utimensat(AT_FDCWD, vol.path("f"), &times, 0) == 0)
        var st = try statOf(vol.path("f"))
        #expect(st.st_atim.tv_sec == 1_000_000 && st.st_mtim.tv_sec == 2_000_000 && st.st_mtim.tv_nsec == 7)
        // UTIME_OMIT leaves a time alone; UTIME_NOW sets it to now.
        times = [timespec(tv_sec: 0, tv_nsec: CSyscalls_UTIME_OMIT), timespec(tv_sec: 0, tv_nsec: CSyscalls_UTIME_NOW)]
        #expect(utimensat(AT_FDCWD, vol.path("f"), &times, 0) == 0)
        st = try statOf(vol.path("f"))
        #expect(st.st_atim.tv_sec == 1_000_000)
        #expect(st.st_mtim.tv_sec > 2_000_000)

        // Times beyond what the volume keeps are clamped, not fatal.
        times = [timespec(tv_sec: Int.max / 2, tv_nsec: 0), timespec(tv_sec: -(Int.max / 2), tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, vol.path("f"), &times, 0) == 0)
        st = try statOf(vol.path("f"))
        #expect(st.st_atim.tv_sec > 9_000_000_000 && st.st_mtim.tv_sec < -9_000_000_000)

        // A write moves mtime and ctime forward.
        let before = try statOf(vol.path("f"))
        usleep(20_000)
        try writeFile(vol.path("f"), [2], flags: O_WRONLY)
        let after = try statOf(vol.path("f"))
        #expect((after.st_mtim.tv_sec, after.st_mtim.tv_nsec) > (before.st_mtim.tv_sec, before.st_mtim.tv_nsec))
        #expect(after.st_ctim.tv_sec >= before.st_ctim.tv_sec)
    }

    @Test func extendedAttributes() throws {
        let vol = try MountedVolume()
        try writeFile(vol.path("f"), [])
        #expect(setxattr(vol.path("f"), "user.a", "one", 3, 0) == 0)
        #expect(errnoOf(setxattr(vol.path("f"), "user.a", "two", 3, Int32(XATTR_CREATE))) == EEXIST)
        #expect(errnoOf(setxattr(vol.path("f"), "user.b", "two", 3, Int32(XATTR_REPLACE))) == ENODATA)
        var buffer = [CChar](repeating: 0, count: 64)
        #expect(getxattr(vol.path("f"), "user.a", &buffer, 64) == 3)
        #expect(getxattr(vol.path("f"), "user.a", nil, 0) == 3)
        #expect(errnoOf(Int32(getxattr(vol.path("f"), "user.a", &buffer, 1))) == ERANGE)
        #expect(errnoOf(Int32(getxattr(vol.path("f"), "user.none", &buffer, 64))) == ENODATA)
        #expect(setxattr(vol.path("f"), "user.b", "", 0, 0) == 0)
        let size = listxattr(vol.path("f"), &buffer, 64)
        #expect(size == 14)
        #expect(removexattr(vol.path("f"), "user.a") == 0)
        #expect(errnoOf(removexattr(vol.path("f"), "user.a")) == ENODATA)
    }

    @Test func statfsShowsTheSizeLimit() throws {
        let vol = try MountedVolume(sizeLimit: 10 << 30)
        try writeFile(vol.path("f"), pattern(1 << 20, seed: 2))
        var st = statvfs()
        #expect(statvfs(vol.mountpoint, &st) == 0)
        #expect(UInt64(st.f_blocks) * UInt64(st.f_frsize) == 10 << 30)
        #expect(UInt64(st.f_bfree) * UInt64(st.f_frsize) == (10 << 30) - (1 << 20))
        #expect(st.f_namemax == 255)
        let df = shell("df -B1 --output=size \(vol.mountpoint) | tail -1")
        #expect(df.output.trimmingCharacters(in: .whitespacesAndNewlines) == "\(10 << 30)")
    }

    @Test func readaheadIsRaisedOnTheMountsDevice() throws {
        let vol = try MountedVolume()
        let device = shell("mountpoint -d \(vol.mountpoint)").output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(device.contains(":"))
        let value = try String(contentsOfFile: "/sys/class/bdi/\(device)/read_ahead_kb", encoding: .utf8)
        #expect(value.trimmingCharacters(in: .whitespacesAndNewlines) == "\(FuseMount.readahead >> 10)")
    }

    @Test func bigSparseFilesAndMmap() throws {
        let vol = try MountedVolume(chunkSize: 1 << 20)
        let fd = open(vol.path("big"), O_RDWR | O_CREAT, 0o644)
        try #require(fd >= 0)
        let far: off_t = 5 << 30
        #expect([UInt8]([1, 2, 3]).withUnsafeBytes { pwrite(fd, $0.baseAddress, 3, far) } == 3)
        close(fd)
        let st = try statOf(vol.path("big"))
        #expect(st.st_size == far + 3)
        #expect(st.st_blocks <= 8)
        let rd = open(vol.path("big"), O_RDONLY)
        var buffer = [UInt8](repeating: 7, count: 8)
        #expect(pread(rd, &buffer, 8, far - 5) == 8)
        #expect(buffer == [0, 0, 0, 0, 0, 1, 2, 3])
        #expect(pread(rd, &buffer, 8, 1 << 30) == 8)
        #expect(buffer == [UInt8](repeating: 0, count: 8))
        close(rd)

        // mmap, as safetensors loads models. In another process: a FUSE server cannot
        // serve page faults of its own address space (the fault holds the mmap lock that
        // the serving thread may need to allocate).
        let data = pattern(3 << 20, seed: 3)
        try writeFile(vol.path("model"), data)
        let reference = vol.directory + "/reference"
        try Data(data).write(to: URL(fileURLWithPath: reference))
        let script = "import mmap,sys,hashlib; f=open(sys.argv[1],'rb'); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); print(hashlib.sha256(m).hexdigest())"
        let mapped = shell("python3 -c \"\(script)\" \(vol.path("model"))")
        let expected = shell("sha256sum \(reference) | cut -d' ' -f1")
        #expect(mapped.status == 0)
        #expect(mapped.output == expected.output)

        let wd = open(vol.path("model"), O_RDWR)
        #expect(CSyscalls_fallocate(wd, 0, 0, off_t(4 << 20)) == 0)
        close(wd)
        #expect(try statOf(vol.path("model")).st_size == 4 << 20)
    }

    @Test func shellToolsCopyAndCompareATree() throws {
        let vol = try MountedVolume()
        let source = "/usr/include/fuse3"
        #expect(shell("cp -r \(source) \(vol.path("tree")) && diff -r \(source) \(vol.path("tree"))").status == 0)
        #expect(shell("ls -lR \(vol.mountpoint) > /dev/null").status == 0)
        #expect(shell("mv \(vol.path("tree")) \(vol.path("moved")) && test -f \(vol.path("moved/fuse.h"))").status == 0)
        #expect(shell("cd \(vol.mountpoint) && tar cf - moved | (mkdir -p \(vol.directory)/x && cd \(vol.directory)/x && tar xf -) && diff -r moved \(vol.directory)/x/moved").status == 0)
        let du = shell("du -s --apparent-size -B1 \(vol.path("moved")) | cut -f1")
        #expect((Int(du.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 100_000)
        #expect(shell("rm -rf \(vol.path("moved")) && test -z \"$(ls -A \(vol.mountpoint))\"").status == 0)
    }

    @Test func remountKeepsEverything() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let data = pattern(5 << 20, seed: 4)
        do {
            let vol = try MountedVolume(directory: directory, keepDirectory: true)
            try writeFile(vol.path("f"), data)
            #expect(mkdir(vol.path("d"), 0o750) == 0)
            #expect(symlink("../f", vol.path("d/l")) == 0)
            #expect(setxattr(vol.path("f"), "user.k", "v", 1, 0) == 0)
            #expect(shell("cp -r /usr/include/fuse3 \(vol.path("tree"))").status == 0)
        }
        let vol = try MountedVolume(directory: directory, keepDirectory: true)
        #expect(try readFile(vol.path("f")) == data)
        #expect(try statOf(vol.path("d")).st_mode & 0o7777 == 0o750)
        #expect(try readFile(vol.path("d/l")) == data)
        var buffer = [CChar](repeating: 0, count: 8)
        #expect(getxattr(vol.path("f"), "user.k", &buffer, 8) == 1)
        #expect(shell("diff -r /usr/include/fuse3 \(vol.path("tree"))").status == 0)
    }

    @Test func twoVolumesAreIndependent() throws {
        let a = try MountedVolume()
        let b = try MountedVolume()
        try writeFile(a.path("only-in-a"), [1])
        #expect(errnoOf(access(b.path("only-in-a"), F_OK)) == ENOENT)
        try writeFile(b.path("only-in-a"), [2])
        #expect(try readFile(a.path("only-in-a")) == [1])
    }
}
