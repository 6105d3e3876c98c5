import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// An HTTP server on loopback that gives scripted answers, one per request in order (the
/// last one again once they run out), and remembers what it was asked: a stand-in for
/// an S3 server that throttles, fails or ignores what it is sent.
final class ScriptedServer: Sendable {
    struct Answer: Sendable {
        var status: HTTPResponseStatus
        var headers: [(String, String)] = []
        var body: String = ""
        /// Close the connection instead of answering: the answer of a request that
        /// reached the server is lost.
        var hangUp = false
    }

    final class Script: Sendable {
        let answers: [Answer]
        let requests = Mutex<[HTTPRequestHead]>([])

        init(_ answers: [Answer]) { self.answers = answers }

        /// Records `head` and gives the answer it gets.
        func answer(_ head: HTTPRequestHead) -> Answer {
            let index = requests.withLock { requests in
                requests.append(head)
                return requests.count - 1
            }
            return answers[min(index, answers.count - 1)]
        }
    }

    let script: Script
    let channel: any Channel

    var endpoint: String { "http://127.0.0.1:\(channel.localAddress?.port ?? 0)" }
    var requests: [HTTPRequestHead] { script.requests.withLock { $0 } }

    /// On `port`, or on any free port when it is 0.
    init(_ answers: [Answer], port: Int = 0) throws {
        let script = Script(answers)
        self.script = script
        channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            // A server coming back on its port finds it in TIME_WAIT after the connections
            // it closed.
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Responder(script: script))
                }
            }
            .bind(host: "127.0.0.1", port: port)
            .wait()
    }

    deinit { channel.close(promise: nil) }

    /// Stops listening, so that another server can take the port.
    func stop() {
        try? channel.close().wait()
    }

    final class Responder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let script: Script
        var head: HTTPRequestHead?

        init(script: Script) { self.script = script }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
            case .body:
                break
            case .end:
                guard let head else { return }
                let answer = script.answer(head)
                if answer.hangUp {
                    context.close(promise: nil)
                    return
                }
                var headers = HTTPHeaders(answer.headers)
                if !headers.contains(name: "content-length") {
                    headers.add(name: "content-length", value: String(answer.body.utf8.count))
                }
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: answer.status, headers: headers))), promise: nil)
                if head.method != .HEAD && !answer.body.isEmpty {
                    context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: answer.body)))), promise: nil)
                }
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
