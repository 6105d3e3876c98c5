import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// The texts of the leaf elements named in `wanted`, in document order. S3's replies
/// are flat enough (a listing's keys, an error's code) that this is all we read of them.
func xmlTexts(_ data: Data, wanted: Set<String>) -> [String: [String]]? {
    let collector = XMLTextCollector(wanted: wanted)
    let parser = XMLParser(data: data)
    parser.shouldResolveExternalEntities = false
    parser.delegate = collector
    guard parser.parse() else { return nil }
    return collector.texts
}

private final class XMLTextCollector: NSObject, XMLParserDelegate {
    let wanted: Set<String>
    var texts: [String: [String]] = [:]
    var current = ""

    init(wanted: Set<String>) { self.wanted = wanted }

    func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                qualifiedName: String?, attributes: [String: String] = [:]) {
        current = ""
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        current += string
    }

    func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?) {
        if wanted.contains(elementName) { texts[elementName, default: []].append(current) }
        current = ""
    }
}

/// One page of a ListObjectsV2 reply.
struct ListPage {
    var keys: [String]
    /// Where the next page starts, when there is one.
    var continuationToken: String?

    init?(_ data: Data) {
        guard let texts = xmlTexts(data, wanted: ["Key", "IsTruncated", "NextContinuationToken"]) else { return nil }
        keys = texts["Key"] ?? []
        let truncated = texts["IsTruncated"]?.first == "true"
        continuationToken = truncated ? texts["NextContinuationToken"]?.first : nil
        // A truncated page without a token would make us list the first page forever.
        if truncated && (continuationToken ?? "").isEmpty { return nil }
    }
}

/// The `<Code>` and `<Message>` of an S3 error reply, when the reply has them (HEAD
/// replies have no body).
struct S3ErrorReply {
    var code: String?
    var message: String?

    init(_ data: Data) {
        let texts = data.isEmpty ? nil : xmlTexts(data, wanted: ["Code", "Message"])
        code = texts?["Code"]?.first
        message = texts?["Message"]?.first
    }
}
