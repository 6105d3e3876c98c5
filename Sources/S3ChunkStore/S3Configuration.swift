#if canImport(Glibc)
import Glibc
#endif

/// The keys requests are signed with. Neither `description` nor `debugDescription` shows
/// the secret or the session token, so a credentials value that ends up in a log or an
/// error message leaks nothing.
public struct S3Credentials: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// Temporary credentials (STS) come with a token, sent as `x-amz-security-token`.
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the optional `AWS_SESSION_TOKEN`,
    /// or nil when either of the first two is unset or empty.
    public static func fromEnvironment() -> S3Credentials? {
        func variable(_ name: String) -> String? {
            guard let value = getenv(name) else { return nil }
            let text = String(cString: value)
            return text.isEmpty ? nil : text
        }
        guard let key = variable("AWS_ACCESS_KEY_ID"), let secret = variable("AWS_SECRET_ACCESS_KEY") else { return nil }
        return S3Credentials(accessKeyID: key, secretAccessKey: secret, sessionToken: variable("AWS_SESSION_TOKEN"))
    }

    public var description: String { "S3Credentials(accessKeyID: \(accessKeyID), secret: <redacted>)" }
    public var debugDescription: String { description }
}

/// Where a volume's objects live and how hard to try reaching them.
public struct S3Configuration: Sendable {
    /// `http://host:port` or `https://host`; requests go to `endpoint/bucket/key`
    /// (path-style), which every S3-compatible server understands and which needs no
    /// DNS name per bucket.
    public var endpoint: String
    public var bucket: String
    /// Keys start with `prefix/`, so that several volumes can share one bucket. Empty
    /// puts objects at the top of the bucket.
    public var prefix: String
    public var region: String
    public var credentials: S3Credentials
    /// How long one store call may take, retries included, before it fails with EIO.
    public var deadline: Duration
    /// How long one attempt may wait for a connection to open.
    public var connectTimeout: Duration
    /// How long one attempt may see no bytes arrive before it is given up and retried.
    public var readTimeout: Duration
    /// Keys per ListObjectsV2 page (S3's maximum is 1000); small values are for tests.
    public var listPageSize: Int

    public init(endpoint: String, bucket: String, prefix: String = "", region: String = "us-east-1",
                credentials: S3Credentials, deadline: Duration = .seconds(30),
                connectTimeout: Duration = .seconds(5), readTimeout: Duration = .seconds(15),
                listPageSize: Int = 1000) {
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.credentials = credentials
        self.deadline = deadline
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.listPageSize = listPageSize
    }
}
