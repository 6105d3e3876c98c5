extension Duration {
    /// The duration in seconds, for rates, deadlines in libraries that count in
    /// seconds, and figures shown to people.
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    /// The duration in whole nanoseconds (what Timer metrics and NIO take).
    public var inNanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}
