/* placeholder: being written */
#ifndef BENCH_HDR_H
#define BENCH_HDR_H
typedef struct hdr_histogram hdr_histogram;
#endif
