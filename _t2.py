import numpy as np, polars as pl, time
from reports.scaling import *
E,A1,alpha=0.10,2.0,0.35
cov=np.zeros(3); N=60; t=time.time()
for seed in range(N):
    rng=np.random.default_rng(seed)
    costs=np.geomspace(1,1000,8)
    rows=[]
    for c in costs:
        for s in range(3):
            err=E+A1*c**-alpha+rng.normal(0,0.005)
            rows.append(dict(router="soft",c=c,acc=1-err,seed=s))
    df=pl.DataFrame(rows).group_by("router","c").agg(pl.col("acc").mean().alias("test_accuracy_mean"),pl.col("acc").std().alias("test_accuracy_std"),pl.len().alias("test_accuracy_n"),pl.col("c").first().alias("train_exaflops_mean"))
    an=analyse(df,quality_of("test_accuracy"))
    c=an.curves[0]; iv=c.intervals()
    truth=dict(E=E,A=A1*c.c0**-alpha,alpha=alpha)
    cov+=[iv[k][0]<=truth[k]<=iv[k][1] for k in ("E","A","alpha")]
print(cov/N, (time.time()-t)/N)
