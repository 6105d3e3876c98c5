import Foundation
import Metadata
import Testing
@testable import VolumeFS

/// The setuid/setgid bits a write by someone without CAP_FSETID removes (the daemon's
/// job once the kernel hands it over): Linux's rules, as 08-permissions checks on a mount.
struct SetIDBitsTests {
    func attr(_ mode: UInt32, gid: UInt32 = 100) -> Attr {
        let zero = Timestamp(seconds: 0, nanoseconds: 0)
        return Attr(ino: InodeNumber(5), mode: UInt32(S_IFREG) | mode, nlink: 1, uid: 0, gid: gid, rdev: 0, size: 0,
                    atime: zero, mtime: zero, ctime: zero)
    }

    @Test func setuidGoesAndSetgidWhereTheGroupMayExecuteOrTheCallerIsOutside() {
        let inGroup: (UInt32) -> Bool = { $0 == 100 }
        let outside: (UInt32) -> Bool = { _ in false }
        #expect(VolumeFS.withoutSetIDBits(attr(0o6777), callerInGroup: inGroup) == UInt32(S_IFREG) | 0o777)
        #expect(VolumeFS.withoutSetIDBits(attr(0o6767), callerInGroup: inGroup) == UInt32(S_IFREG) | 0o2767)
        #expect(VolumeFS.withoutSetIDBits(attr(0o6767), callerInGroup: outside) == UInt32(S_IFREG) | 0o767)
        #expect(VolumeFS.withoutSetIDBits(attr(0o4755), callerInGroup: outside) == UInt32(S_IFREG) | 0o755)
        #expect(VolumeFS.withoutSetIDBits(attr(0o2767), callerInGroup: inGroup) == nil)
        #expect(VolumeFS.withoutSetIDBits(attr(0o1777), callerInGroup: outside) == nil)
        #expect(VolumeFS.withoutSetIDBits(attr(0o644), callerInGroup: outside) == nil)
    }
}
