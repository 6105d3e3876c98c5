import Testing
@testable import S3ChunkStore

/// One case of AWS's Signature Version 4 test suite (aws-sig-v4-test-suite): the request
/// and the canonical request, string to sign and Authorization header AWS publishes for
/// it. The expected strings are the suite's `.creq`, `.sts` and `.authz` files; the
/// signatures also agree with awslabs/aws-c-auth's copy of the suite.
struct SigningVector: Sendable, CustomTestStringConvertible {
    let name: String
    let method: String
    let query: [(String, String)]
    let headers: [(String, String)]
    let body: String
    let canonicalRequest: String
    let stringToSign: String
    let authorization: String

    var testDescription: String { name }
}

let suiteHost = ("Host", "example.amazonaws.com")
let suiteDate = ("X-Amz-Date", "20150830T123600Z")
let emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

let signingVectors: [SigningVector] = [
    SigningVector(
        name: "get-vanilla", method: "GET", query: [], headers: [suiteHost, suiteDate], body: "",
        canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(emptyHash)",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    SigningVector(
        name: "get-vanilla-query-order-key-case", method: "GET", query: [("Param2", "value2"), ("Param1", "value1")],
        headers: [suiteHost, suiteDate], body: "",
        canonicalRequest: "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(emptyHash)",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    SigningVector(
        name: "get-header-value-trim", method: "GET", query: [],
        headers: [suiteHost, ("My-Header1", " value1"), ("My-Header2", " \"a   b   c\""), suiteDate], body: "",
        canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\(emptyHash)",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\na726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    SigningVector(
        name: "get-header-key-duplicate", method: "GET", query: [],
        headers: [suiteHost, ("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1"), suiteDate], body: "",
        canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n\(emptyHash)",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\ndc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    SigningVector(
        name: "post-vanilla", method: "POST", query: [], headers: [suiteHost, suiteDate], body: "",
        canonicalRequest: "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(emptyHash)",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    SigningVector(
        name: "post-x-www-form-urlencoded", method: "POST", query: [],
        headers: [("Content-Type", "application/x-www-form-urlencoded"), suiteHost, suiteDate], body: "Param1=value1",
        canonicalRequest: "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    SigningVector(
        name: "post-sts-header-before", method: "POST", query: [],
        headers: [suiteHost, suiteDate, ("X-Amz-Security-Token", sessionToken)], body: "",
        canonicalRequest: "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:\(sessionToken)\n\nhost;x-amz-date;x-amz-security-token\n\(emptyHash)",
        stringToSign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nc237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6",
        authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"),
]

let sessionToken = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="

@Suite struct SignatureV4Tests {
    let suiteSigner = SignatureV4(
        credentials: S3Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1", service: "service")

    @Test(arguments: signingVectors)
    func matchesAWSTestSuite(_ vector: SigningVector) {
        let signed = suiteSigner.sign(method: vector.method, path: "/", query: vector.query, headers: vector.headers,
                                      payloadHash: SignatureV4.hexSHA256(Array(vector.body.utf8)),
                                      amzDate: "20150830T123600Z")
        #expect(signed.canonicalRequest == vector.canonicalRequest)
        #expect(signed.stringToSign == vector.stringToSign)
        #expect(signed.authorization == vector.authorization)
    }

    /// The GET Object example of AWS's S3 documentation (Authenticating Requests: Using
    /// the Authorization Header, "Example: GET Object"): a ranged GET with an empty body.
    @Test func matchesTheS3DocumentationGetObjectExample() {
        let signer = SignatureV4(
            credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1", service: "s3")
        let signed = signer.sign(method: "GET", path: "/test.txt", query: [],
                                 headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
                                           ("x-amz-content-sha256", emptyHash), ("x-amz-date", "20130524T000000Z")],
                                 payloadHash: emptyHash, amzDate: "20130524T000000Z")
        #expect(signed.canonicalRequest == "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\nx-amz-content-sha256:\(emptyHash)\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\(emptyHash)")
        #expect(signed.stringToSign == "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
        #expect(signed.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signed.authorization.hasPrefix("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "))
    }

    @Test func datesAreFormattedInUTC() {
        #expect(SignatureV4.amzDate(secondsSince1970: 1_440_938_160) == "20150830T123600Z")
        #expect(SignatureV4.amzDate(secondsSince1970: 1_369_353_600) == "20130524T000000Z")
        #expect(SignatureV4.amzDate(secondsSince1970: 951_782_400) == "20000229T000000Z")
    }

    @Test func queryValuesAreEncodedOnce() {
        #expect(SignatureV4.uriEncode("a b/c~d+e=") == "a%20b%2Fc~d%2Be%3D")
        #expect(SignatureV4.canonicalQuery([("prefix", "vol/"), ("list-type", "2")]) == "list-type=2&prefix=vol%2F")
    }

    @Test func credentialsNeverShowTheSecret() {
        let credentials = S3Credentials(accessKeyID: "AKID", secretAccessKey: "very-secret", sessionToken: "token-secret")
        #expect(!"\(credentials)".contains("very-secret") && !"\(credentials)".contains("token-secret"))
        #expect(!String(reflecting: credentials).contains("-secret"))
    }
}
