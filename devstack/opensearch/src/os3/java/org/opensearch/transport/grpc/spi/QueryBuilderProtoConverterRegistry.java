package org.opensearch.transport.grpc.spi;

/** See {@link QueryBuilderProtoConverter}: a type k-NN 3.x names, never called here. */
public interface QueryBuilderProtoConverterRegistry {}
