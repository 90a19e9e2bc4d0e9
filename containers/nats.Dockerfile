# nats-server built from the module go.mod pins (no registry to pull the
# official image from), static, in an empty image; JetStream data in a
# volume. containers/build makes it.
FROM scratch
COPY nats-server /nats-server
VOLUME /data
# clients, cluster routes, monitoring.
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
CMD ["-js", "-sd", "/data"]
