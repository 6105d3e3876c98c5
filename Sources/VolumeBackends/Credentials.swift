#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import S3ChunkStore

/// The secrets a network volume needs: never stored in the metadata, never printed or
/// logged. They come from the environment (`PGPASSWORD` or `PGPASSFILE`, which libpq
/// reads itself; `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or
/// from files only their owner can read.
public struct Credentials: Sendable {
    /// The PostgreSQL password, when given in a file (otherwise libpq finds its own).
    public var postgresPassword: String?
    /// The object store's keys, when given in a file or the environment.
    public var s3: S3Credentials?

    public init(postgresPassword: String? = nil, s3: S3Credentials? = nil) {
        self.postgresPassword = postgresPassword
        self.s3 = s3
    }

    /// Reads the files given (each must be readable by its owner alone) and the
    /// environment.
    ///
    /// - Parameters:
    ///   - passwordFile: a file whose first line is the PostgreSQL password.
    ///   - s3CredentialsFile: lines `AWS_ACCESS_KEY_ID=...`, `AWS_SECRET_ACCESS_KEY=...`
    ///     and optionally `AWS_SESSION_TOKEN=...`; they win over the environment.
    public static func load(passwordFile: String?, s3CredentialsFile: String?) throws(VolumeError) -> Credentials {
        var credentials = Credentials(s3: S3Credentials.fromEnvironment())
        if let passwordFile {
            let text = try readPrivateFile(passwordFile, what: "password file")
            let password = text.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
            guard !password.isEmpty else { throw VolumeError("the password file \(passwordFile) is empty") }
            credentials.postgresPassword = password
        }
        if let s3CredentialsFile {
            var values: [String: String] = [:]
            for line in try readPrivateFile(s3CredentialsFile, what: "S3 credentials file").split(separator: "\n") {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                guard !trimmed.isEmpty, !trimmed.hasPrefix("#"), let equals = trimmed.firstIndex(of: "=") else { continue }
                let key = trimmed[..<equals].trimmingCharacters(in: .whitespaces)
                    .replacingOccurrences(of: "export ", with: "")
                values[key] = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: CharacterSet(charactersIn: " \"'"))
            }
            guard let key = values["AWS_ACCESS_KEY_ID"], let secret = values["AWS_SECRET_ACCESS_KEY"] else {
                throw VolumeError("the S3 credentials file \(s3CredentialsFile) needs AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines")
            }
            credentials.s3 = S3Credentials(accessKeyID: key, secretAccessKey: secret, sessionToken: values["AWS_SESSION_TOKEN"])
        }
        return credentials
    }

    /// The object store's keys, or the one line that says how to give them.
    func requireS3() throws(VolumeError) -> S3Credentials {
        guard let s3 else {
            throw VolumeError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a 0600 file with --s3-credentials-file")
        }
        return s3
    }

    /// The contents of a file that holds a secret, refused unless only its owner can
    /// read it (as ssh refuses a private key others can read).
    static func readPrivateFile(_ path: String, what: String) throws(VolumeError) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw VolumeError("cannot read the \(what) \(path): \(describeErrno(errno))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw VolumeError("the \(what) \(path) is not a regular file") }
        guard info.st_mode & 0o077 == 0 else {
            throw VolumeError("the \(what) \(path) can be read by others; make it private with: chmod 600 \(path)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VolumeError("cannot read the \(what) \(path)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
